"""aioconnector: asyncio-native event connectors for OpenFaaS.

Route each message to every function whose ``topic`` annotation names its topic, concurrently and
within a bound, and stream the results. See ``AsyncController``.
"""

from ._callback_app import CallbackApp as CallbackApp
from ._callbacks import CallbackStats as CallbackStats
from ._callbacks import PendingInvocation as PendingInvocation
from ._config import BasicAuth as BasicAuth
from ._config import ControllerConfig as ControllerConfig
from ._controller import AsyncController as AsyncController
from ._controller import ControllerStats as ControllerStats
from ._errors import AuthenticationError as AuthenticationError
from ._errors import ConnectorError as ConnectorError
from ._errors import ControllerStateError as ControllerStateError
from ._errors import DiscoveryError as DiscoveryError
from ._errors import GatewayUnavailableError as GatewayUnavailableError
from ._errors import InvocationCancelledError as InvocationCancelledError
from ._errors import InvocationError as InvocationError
from ._errors import MissingExtraError as MissingExtraError
from ._errors import NotAGatewayError as NotAGatewayError
from ._errors import ResponseTooLargeError as ResponseTooLargeError
from ._errors import UpstreamConnectionError as UpstreamConnectionError
from ._errors import UpstreamStatusError as UpstreamStatusError
from ._errors import UpstreamTimeoutError as UpstreamTimeoutError
from ._health import serve_health as serve_health
from ._outcome import InvocationFailure as InvocationFailure
from ._outcome import Outcome as Outcome
from ._outcome import OutcomeKind as OutcomeKind
from ._outcome import OutcomePolicy as OutcomePolicy
from ._outcome import OutcomeReason as OutcomeReason
from ._outcome import Settlement as Settlement
from ._outcome import outcome_of as outcome_of
from ._outcome import settlement_of as settlement_of
from ._policy import AdaptiveConcurrency as AdaptiveConcurrency
from ._policy import FunctionPolicy as FunctionPolicy
from ._policy import RetryBudget as RetryBudget
from ._results import InvocationResult as InvocationResult
from ._results import ResultStream as ResultStream
from ._retry import RetryPolicy as RetryPolicy
from ._source import SourceMessage as SourceMessage
from ._source import SourceStats as SourceStats
from ._source import run_source as run_source
from ._stats import FunctionState as FunctionState
from ._version import __version__ as __version__

__all__ = [
    "AdaptiveConcurrency",
    "AsyncController",
    "AuthenticationError",
    "BasicAuth",
    "CallbackApp",
    "CallbackStats",
    "ConnectorError",
    "ControllerConfig",
    "ControllerStateError",
    "ControllerStats",
    "DiscoveryError",
    "FunctionPolicy",
    "FunctionState",
    "GatewayUnavailableError",
    "InvocationCancelledError",
    "InvocationError",
    "InvocationFailure",
    "InvocationResult",
    "MissingExtraError",
    "NotAGatewayError",
    "Outcome",
    "OutcomeKind",
    "OutcomePolicy",
    "OutcomeReason",
    "PendingInvocation",
    "ResponseTooLargeError",
    "ResultStream",
    "RetryBudget",
    "RetryPolicy",
    "Settlement",
    "SourceMessage",
    "SourceStats",
    "UpstreamConnectionError",
    "UpstreamStatusError",
    "UpstreamTimeoutError",
    "__version__",
    "outcome_of",
    "run_source",
    "serve_health",
    "settlement_of",
]

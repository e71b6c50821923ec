// The Go peer of the benchmarks: github.com/openfaas/connector-sdk driven like aioconnector.
// build.sh builds it offline from sources in a scratch folder (replace lines on a copy of this
// file); no replace lines and no go.sum here: the repository carries no Go source but main.go
// (for an online build instead: add a go.sum with `go mod tidy` in a copy).
module aioconnector/benchmarks/gopeer

go 1.19

require (
	github.com/openfaas/connector-sdk v0.7.1
	github.com/openfaas/faas-provider v0.19.1
)

require github.com/alexellis/go-execute v0.5.0 // indirect

// Command gopeer measures github.com/openfaas/connector-sdk the way benchmarks/bench.py
// measures aioconnector: C goroutines call controller.Invoke on a one-function topic until N
// invocations are done, against the benchmarks' stub gateway, and it prints one JSON line:
//
//	{"client":"go-connector-sdk","concurrency":C,"invocations":N,"inv_per_s":...,
//	 "cpu_us_per_inv":...,"peak_rss_kib":...,...}
//
// CPU is getrusage (user + system, the whole process) over the measured window; peak RSS is
// VmHWM of the whole run (/proc/self/status; ru_maxrss where there is no /proc). Invoke is
// synchronous and fans out to the topic's functions one after another: that is the SDK being
// measured. With -idle=D it invokes nothing: once the topic map has the topic it stays idle
// for D and prints {"client":...,"peak_rss_kib":...,"rss_kib":...,"idle_s":...,
// "go_version":...}, the resident memory (VmRSS) of a connector waiting for messages.
// Build it with build.sh (see benchmarks/README.md); it talks to the gateway URL it is given
// and nothing else.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/openfaas/connector-sdk/types"
	"github.com/openfaas/faas-provider/auth"
)

// counter is the receiver: it counts every response the controller publishes.
type counter struct {
	ok, failed atomic.Int64
}

func (c *counter) Response(res types.InvokerResponse) {
	if res.Error != nil || res.Status < 200 || res.Status > 299 {
		c.failed.Add(1)
	} else {
		c.ok.Add(1)
	}
}

func (c *counter) total() int64 { return c.ok.Load() + c.failed.Load() }

type window struct {
	invocations, failed int64
	elapsed             time.Duration
	cpu                 time.Duration
	capped              bool
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		log.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procStatusKiB reads a "Name:   1234 kB" field of /proc/self/status; false without /proc.
func procStatusKiB(name string) (int64, bool) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, name+":") {
			var kib int64
			if _, err := fmt.Sscanf(line[len(name)+1:], "%d", &kib); err == nil {
				return kib, true
			}
		}
	}
	return 0, false
}

// peakRSSKiB is this process's resident high-water mark. Not ru_maxrss where /proc has VmHWM:
// Linux carries ru_maxrss over exec, so started by bench.py it is at least the Python child's
// RSS at the fork (tens of MiB), whatever the peer itself uses.
func peakRSSKiB() int64 {
	if kib, ok := procStatusKiB("VmHWM"); ok {
		return kib
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		log.Fatalf("getrusage: %v", err)
	}
	return int64(ru.Maxrss) // KiB on Linux
}

// rssKiB is the resident set now (VmRSS); the high-water mark where there is no /proc.
func rssKiB() int64 {
	if kib, ok := procStatusKiB("VmRSS"); ok {
		return kib
	}
	return peakRSSKiB()
}

// run has c goroutines call Invoke until budget calls are taken or the time cap passes (0: no
// cap), then waits for the receiver to have counted every response of the window.
func run(ctl types.Controller, seen *counter, topic string, body []byte, c int, budget int64,
	timeCap time.Duration) window {
	remaining := budget
	before := seen.total()
	var deadline time.Time
	if timeCap > 0 {
		deadline = time.Now().Add(timeCap)
	}
	var capped atomic.Bool
	var wg sync.WaitGroup
	cpu0, t0 := cpuTime(), time.Now()
	for k := 0; k < c; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			message := body // Invoke takes a pointer; each goroutine its own
			for atomic.AddInt64(&remaining, -1) >= 0 {
				ctl.Invoke(topic, &message, nil)
				if !deadline.IsZero() && time.Now().After(deadline) {
					capped.Store(atomic.LoadInt64(&remaining) > 0)
					return
				}
			}
		}()
	}
	wg.Wait()
	taken := budget - max64(atomic.LoadInt64(&remaining), 0)
	// Invoke returns once the response is handed over; the subscriber may still be counting it.
	for waited := 0; seen.total()-before < taken && waited < 1000; waited++ {
		time.Sleep(time.Millisecond)
	}
	elapsed, cpu := time.Since(t0), cpuTime()-cpu0
	return window{
		invocations: seen.total() - before,
		failed:      seen.failed.Load(),
		elapsed:     elapsed,
		cpu:         cpu,
		capped:      capped.Load(),
	}
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

func main() {
	gateway := flag.String("gateway", "http://127.0.0.1:8080", "the gateway's URL")
	topic := flag.String("topic", "bench", "the topic to invoke")
	concurrency := flag.Int("c", 1, "goroutines calling Invoke")
	invocations := flag.Int64("n", 20000,
		"Invoke calls in the measured window (a topic of k functions: k invocations each)")
	bodySize := flag.Int("body", 100, "message size in bytes")
	warmup := flag.Int64("warmup", -1, "Invoke calls before the window (-1: max(2*C, N/10))")
	timeCap := flag.Duration("cap", 0, "time cap of the measured window (0: none)")
	warmupCap := flag.Duration("warmup-cap", 0, "time cap of the warm-up (0: none)")
	timeout := flag.Duration("timeout", 10*time.Second, "ControllerConfig.UpstreamTimeout")
	user := flag.String("user", "", "basic auth user for /system/* (empty: no credentials)")
	password := flag.String("password", "", "basic auth password")
	logInvocations := flag.Bool("log", false,
		"keep the SDK's log line per invocation (default: log output discarded)")
	wait := flag.Duration("wait", 10*time.Second, "how long to wait for the topic to appear")
	idle := flag.Duration("idle", 0,
		"invoke nothing: once the topic is mapped, stay idle this long, then print peak RSS only")
	flag.Parse()
	if *idle < 0 {
		log.Fatal("-idle must be >= 0")
	}
	if *concurrency < 1 || *invocations < 1 || *bodySize < 1 {
		log.Fatal("-c, -n and -body must be >= 1")
	}
	if !*logInvocations {
		// The SDK logs "[connector] Invoke: fn" for every invocation; aioconnector logs none.
		log.SetOutput(io.Discard)
	}

	var creds *auth.BasicAuthCredentials
	if *user != "" {
		creds = &auth.BasicAuthCredentials{User: *user, Password: *password}
	}
	config := &types.ControllerConfig{
		UpstreamTimeout:          *timeout,
		GatewayURL:               strings.TrimRight(*gateway, "/"),
		PrintResponse:            false,
		PrintResponseBody:        false,
		PrintRequestBody:         false,
		RebuildInterval:          30 * time.Second,
		TopicAnnotationDelimiter: ",",
		AsyncFunctionInvocation:  false,
		PrintSync:                false,
		ContentType:              "application/json",
		BasicAuth:                creds != nil,
		UserAgent:                "aioconnector-bench/go-connector-sdk",
	}
	ctl := types.NewController(creds, config)
	seen := &counter{}
	ctl.Subscribe(seen)
	ctl.BeginMapBuilder()

	found := false
	for until := time.Now().Add(*wait); !found && time.Now().Before(until); {
		for _, t := range ctl.Topics() {
			found = found || t == *topic
		}
		if !found {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if !found {
		fmt.Fprintf(os.Stderr, "gopeer: topic %q not found at %s within %s\n", *topic, *gateway, *wait)
		os.Exit(1)
	}
	if *idle > 0 {
		time.Sleep(*idle)
		printRow(map[string]any{
			"client":       "go-connector-sdk",
			"peak_rss_kib": peakRSSKiB(),
			"rss_kib":      rssKiB(),
			"idle_s":       idle.Seconds(),
			"go_version":   runtime.Version(),
		})
		return
	}

	body := []byte(`{"event":"bench","payload":"` + strings.Repeat("x", maxInt(*bodySize-30, 0)) + `"}`)
	if len(body) != *bodySize { // a size the JSON shape cannot take: plain bytes
		body = []byte(strings.Repeat("x", *bodySize))
	}
	warm := *warmup
	if warm < 0 {
		warm = max64(2*int64(*concurrency), *invocations/10)
	}
	if warm > 0 {
		run(ctl, seen, *topic, body, *concurrency, warm, *warmupCap)
	}
	failedBefore := seen.failed.Load()
	w := run(ctl, seen, *topic, body, *concurrency, *invocations, *timeCap)

	seconds := w.elapsed.Seconds()
	row := map[string]any{
		"client":         "go-connector-sdk",
		"concurrency":    *concurrency,
		"invocations":    w.invocations,
		"failed":         w.failed - failedBefore,
		"elapsed_s":      seconds,
		"inv_per_s":      float64(w.invocations) / seconds,
		"cpu_us_per_inv": nil,
		"peak_rss_kib":   peakRSSKiB(),
		"capped":         w.capped,
		"body_bytes":     len(body),
		"go_version":     runtime.Version(),
	}
	if w.invocations > 0 {
		row["cpu_us_per_inv"] = float64(w.cpu.Microseconds()) / float64(w.invocations)
	}
	printRow(row)
}

// printRow prints row as the one JSON line bench.py reads.
func printRow(row map[string]any) {
	line, err := json.Marshal(row)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(line))
}

func maxInt(a, b int) int {
	if a > b {
		return a
	}
	return b
}

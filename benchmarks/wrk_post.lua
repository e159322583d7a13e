-- POST the same JSON body on every request; print a machine-readable summary at the end.
local body_path = os.getenv("BENCH_BODY")
local f = assert(io.open(body_path, "rb"))
wrk.method = os.getenv("BENCH_METHOD") or "POST"
if wrk.method == "POST" then
  wrk.body = f:read("*a")
end
f:close()
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("BENCH_KEY")
if key and #key > 0 then
  wrk.headers["Authorization"] = "Bearer " .. key
end

done = function(summary, latency, requests)
  io.write(string.format(
    "BENCH {\"requests\": %d, \"duration_us\": %d, \"connect_errors\": %d, \"read_errors\": %d, " ..
    "\"timeouts\": %d, \"non2xx\": %d, \"p50_us\": %d, \"p90_us\": %d, \"p99_us\": %d}\n",
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.timeout, summary.errors.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end

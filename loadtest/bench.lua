-- wrk script used for every cell of the edgeshard benchmark.
--   WRK_BODY_BYTES=N  (env) turns the request into a POST with an N-byte body
-- and, at the end, prints one machine-readable line:
--   RESULT requests=.. duration_us=.. ... lat_p50_us=.. lat_p99_us=.. lat_p999_us=..
-- (wrk --latency only prints p50/75/90/99; p99.9 comes from here.)
local n = tonumber(os.getenv("WRK_BODY_BYTES") or "0") or 0
if n > 0 then
  wrk.method = "POST"
  wrk.body = string.rep("x", n)
  wrk.headers["Content-Type"] = "application/octet-stream"
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d bytes=%d err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d " ..
    "lat_mean_us=%.1f lat_max_us=%d lat_p50_us=%d lat_p90_us=%d lat_p99_us=%d lat_p999_us=%d\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end

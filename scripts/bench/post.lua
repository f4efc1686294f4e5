-- wrk script: POSTs the JSON body in $WRK_BODY to the URL and, when done, prints one JSON line
-- {"requests", "ok", "non2xx", "socket_errors", "secs", "rps", "ok_rps", "p50_us", "p99_us"}.
-- The latency figures are over every answer (wrk does not split them by status).
local f = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
-- $WRK_SEAL, when set, asks a Cairn node for that receipt seal (`batch`).
if os.getenv("WRK_SEAL") then
  wrk.headers["cairn-receipt-seal"] = os.getenv("WRK_SEAL")
end

function done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  local ok = summary.requests - e.status
  io.write(string.format(
    '{"requests":%d,"ok":%d,"non2xx":%d,"socket_errors":%d,"secs":%.3f,"rps":%.1f,"ok_rps":%.1f,"p50_us":%.1f,"p99_us":%.1f}\n',
    summary.requests, ok, e.status, e.connect + e.read + e.write + e.timeout, secs,
    summary.requests / secs, ok / secs, latency:percentile(50), latency:percentile(99)))
end

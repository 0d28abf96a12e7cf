-- wrk script of emporium-bench: every request from the next of N users.
--
--   wrk -t1 -c64 -d5s -s requests.lua http://127.0.0.1:PORT -- TOKENS METHOD PATH [BODY]
--
-- TOKENS is a file with one bearer token per line (the harness writes 20,000), so the
-- server's per-user rate limits stay on as in production. The requests are formatted
-- once in init(): request() only hands out the next prebuilt string, which keeps the
-- load generator's own CPU per request far below the server's. No response() callback
-- either (it would make wrk parse every answer into Lua); the harness reads the answer
-- mix from the server's /metrics instead. done() prints one JSON line for the harness.

local prebuilt = {}
local count = 0
local next_index = 0

function init(args)
   local tokens, method, path, body = args[1], args[2], args[3], args[4]
   for token in io.lines(tokens) do
      count = count + 1
      local headers = { ["Authorization"] = "Bearer " .. token }
      if body ~= nil and body ~= "" then
         headers["Content-Type"] = "application/json"
      end
      prebuilt[count] = wrk.format(method, path, headers, body)
   end
   -- Threads start at different users so they do not walk in step.
   next_index = math.random(count) - 1
end

function request()
   next_index = next_index % count + 1
   return prebuilt[next_index]
end

function done(summary, latency, requests)
   io.write(string.format(
      '{"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,' ..
      '"status_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
      summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
      summary.errors.write, summary.errors.status, summary.errors.timeout,
      latency:percentile(50), latency:percentile(99), latency.max))
end

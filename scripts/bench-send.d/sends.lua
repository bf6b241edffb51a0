-- wrk: POST template sends, the API keys in turn (BENCH_KEYS: space separated), each to the
-- next of 100,000 test numbers (+60120000000 + i, the sandbox's "delivered" range).
local keys, i, sent, prefix = {}, 0, 0, nil
local body_a = '{"to":"+6012'
local body_b = '9","template":{"name":"order_update","language":"en_US","category":"utility",'
    .. '"components":[{"type":"body","parameters":[{"type":"text","text":"ORDER-1"}]}]}}'
-- Runs in wrk's main state once per thread before init: numbers the threads.
local threads = 0
function setup(thread)
    threads = threads + 1
    thread:set("thread_number", threads)
end
function init(args)
    for k in string.gmatch(os.getenv("BENCH_KEYS"), "%S+") do
        keys[#keys + 1] = k
    end
    i = math.random(0, 99999)
    -- BENCH_IDEMPOTENCY=1: each request carries an Idempotency-Key of its own.
    if os.getenv("BENCH_IDEMPOTENCY") == "1" then
        prefix = string.format("bench-%d-%d-", os.time(), thread_number or 0)
    end
end
function request()
    i = (i + 1) % 100000
    local key = keys[i % #keys + 1]
    local headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key }
    if prefix then
        sent = sent + 1
        headers["Idempotency-Key"] = prefix .. sent
    end
    return wrk.format("POST", "/v1/messages", headers, body_a .. string.format("%06d", i) .. body_b)
end

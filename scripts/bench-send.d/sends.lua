-- wrk: POST template sends, the API keys in turn (BENCH_KEYS: space separated), each to the
-- next of 100,000 test numbers (+60120000000 + i, the sandbox's "delivered" range).
local keys, i = {}, 0
local body_a = '{"to":"+6012'
local body_b = '9","template":{"name":"order_update","language":"en_US","category":"utility",'
    .. '"components":[{"type":"body","parameters":[{"type":"text","text":"ORDER-1"}]}]}}'
function init(args)
    for k in string.gmatch(os.getenv("BENCH_KEYS"), "%S+") do
        keys[#keys + 1] = k
    end
    i = math.random(0, 99999)
end
function request()
    i = (i + 1) % 100000
    local key = keys[i % #keys + 1]
    return wrk.format("POST", "/v1/messages",
        { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key },
        body_a .. string.format("%06d", i) .. body_b)
end

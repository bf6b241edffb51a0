-- wrk: POST the prepared signed Meta notifications in turn (one "signature body" a line).
local sigs, bodies, i = {}, {}, 0
function init(args)
    for line in io.lines(os.getenv("BENCH_PAYLOADS")) do
        local sig, body = line:match("^(%S+) (.*)$")
        sigs[#sigs + 1] = sig
        bodies[#bodies + 1] = body
    end
end
function request()
    i = i % #bodies + 1
    return wrk.format("POST", "/webhooks/meta",
        { ["Content-Type"] = "application/json", ["X-Hub-Signature-256"] = sigs[i] }, bodies[i])
end

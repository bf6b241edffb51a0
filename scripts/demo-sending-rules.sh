#!/usr/bin/env bash
# A scripted session against a running `kirim-local` (README, "Sending rules, scripted"):
# STOP and START through signed Meta webhooks, an idempotent retry, the balance reaching
# zero (402), and a 1,000-recipient CSV broadcast followed to completion.
#
# Start local mode first, with known secrets:
#   KIRIM_OPERATOR_TOKEN=op_demo KIRIM_META_APP_SECRET=demo-app-secret cargo run --bin kirim-local
# then: scripts/demo-sending-rules.sh
# Needs curl and python3 (for JSON and the webhook's HMAC). The test suite runs it against
# local mode (`demo_script.rs`), so it keeps working as the API changes.
set -euo pipefail

BASE="${KIRIM_URL:-http://127.0.0.1:3000}"
OP="${KIRIM_OPERATOR_TOKEN:-op_demo}"
APP_SECRET="${KIRIM_META_APP_SECRET:-demo-app-secret}"
PNID="${DEMO_PHONE_NUMBER_ID:-$((RANDOM * 32768 + RANDOM + 100000))}"

json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {'d': d}))" "$1"; }
say() { printf '\n== %s\n' "$*"; }
post() { # path token body [extra curl args...] -> prints "STATUS BODY"
    local path=$1 token=$2 body=$3; shift 3
    curl -s -o /tmp/kirim-demo.out -w '%{http_code}' -X POST "$BASE$path" \
        -H "Authorization: Bearer $token" -H 'content-type: application/json' "$@" -d "$body"
    printf ' %s\n' "$(cat /tmp/kirim-demo.out)"
}
webhook() { # body: a Meta notification, signed like Meta does
    local body=$1 sig
    sig=$(BODY="$body" SECRET="$APP_SECRET" python3 -c \
        'import hmac,hashlib,os; print(hmac.new(os.environ["SECRET"].encode(), os.environ["BODY"].encode(), hashlib.sha256).hexdigest())')
    curl -s -o /dev/null -w 'webhook %{http_code}\n' -X POST "$BASE/webhooks/meta" \
        -H 'content-type: application/json' -H "X-Hub-Signature-256: sha256=$sig" -d "$body"
}
inbound() { # from-digits text
    webhook "{\"object\":\"whatsapp_business_account\",\"entry\":[{\"id\":\"1000001\",\"changes\":[{\"field\":\"messages\",\"value\":{\"messaging_product\":\"whatsapp\",\"metadata\":{\"display_phone_number\":\"60300000000\",\"phone_number_id\":\"$PNID\"},\"messages\":[{\"from\":\"$1\",\"id\":\"wamid.demo$RANDOM\",\"timestamp\":\"$(date +%s)\",\"type\":\"text\",\"text\":{\"body\":\"$2\"}}]}}]}]}"
}
# The sandbox's catalogue (API.md): order_update, en_US, utility, one body parameter.
SEND='{"to":"+60123456789","template":{"name":"order_update","language":"en_US","category":"utility","components":[{"type":"body","parameters":[{"type":"text","text":"ORDER-42"}]}]}}'
COMPONENTS=$(python3 -c 'import json,urllib.parse; print(urllib.parse.quote(json.dumps([{"type":"body","parameters":[{"type":"text","text":"RAYA-30"}]}])))')

say "Onboard a tenant with 3 credits (phone_number_id $PNID)"
KEY=$(curl -s -X POST "$BASE/v1/platform/tenants" -H "Authorization: Bearer $OP" -H 'content-type: application/json' \
    -d "{\"name\":\"Kedai Demo\",\"waba_id\":\"1000001\",\"phone_number_id\":\"$PNID\",\"meta_access_token\":\"EAAG-demo\",\"credits\":3}" \
    | json 'd["admin_api_key"]')
echo "admin key: ${KEY:0:10}…"

say "The customer replies STOP: the next send is refused (422) and costs nothing"
inbound 60123456789 "STOP"
post /v1/messages "$KEY" "$SEND"

say "The customer replies START: sending works again"
inbound 60123456789 "start"
post /v1/messages "$KEY" "$SEND"

say "An idempotent retry answers the same id (and debits once)"
post /v1/messages "$KEY" "$SEND" -H 'Idempotency-Key: order-42-confirmation'
post /v1/messages "$KEY" "$SEND" -H 'Idempotency-Key: order-42-confirmation'
curl -s "$BASE/v1/account" -H "Authorization: Bearer $KEY" | json '"credits now: %s" % d["credits"]'

say "Spend the last credit; at zero the next send is refused with 402"
post /v1/messages "$KEY" "$SEND"
post /v1/messages "$KEY" "$SEND"

say "Top up 1,000 credits, then broadcast to a 1,000-row CSV"
post "/v1/platform/tenants/$(curl -s "$BASE/v1/account" -H "Authorization: Bearer $KEY" | json 'd["id"]')/credits" "$OP" \
    '{"amount":1000,"reference":"INV-DEMO-1"}'
python3 -c 'print("name,phone"); [print(f"Customer {i},+6013{i:06}9") for i in range(1000)]' > /tmp/kirim-demo.csv
BROADCAST=$(curl -s -X POST "$BASE/v1/broadcasts?template_name=order_update&template_language=en_US&template_components=$COMPONENTS" \
    -H "Authorization: Bearer $KEY" -H 'content-type: text/csv' --data-binary @/tmp/kirim-demo.csv)
echo "$BROADCAST"
ID=$(echo "$BROADCAST" | json 'd["id"]')
for _ in $(seq 1 240); do
    VIEW=$(curl -s "$BASE/v1/broadcasts/$ID" -H "Authorization: Bearer $KEY")
    READ=$(echo "$VIEW" | json 'd["counts"].get("read", 0)')
    [ "$READ" = "1000" ] && break
    sleep 0.5
done
echo "$VIEW" | json '"broadcast %s: %s (enqueued %s of %s)" % (d["status"], d["counts"], d["enqueued"], d["accepted"])'
curl -s "$BASE/v1/account" -H "Authorization: Bearer $KEY" | json '"credits now: %s" % d["credits"]'

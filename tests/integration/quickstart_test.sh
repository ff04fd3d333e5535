#!/usr/bin/env bash
# deploy/quickstart.sh end to end, as a newcomer runs it (without its build
# step): every job must succeed through the real coordinator and workers, the
# held-out numbers must show that training learned, the exports must be real
# Hugging Face folders (transformers and peft load them), and --keep must
# leave a working cluster that the pids file stops.
#   tests/integration/quickstart_test.sh BIN_DIR SOURCE_DIR PYTHON
set -euo pipefail
BIN="$(cd "$1" && pwd)"
SRC="$(cd "$2" && pwd)"
PY="$3"
work="$(mktemp -d /tmp/gemma-quickstart-test.XXXXXX)"
Q="$work/run"
keep_work=0
fail() {
  keep_work=1
  echo "FAIL: $*"
  echo "--- last lines of the quickstart's output ($work/out.log)"
  tail -40 "$work/out.log" 2>/dev/null || true
  for f in "$Q"/coordinator.log "$Q"/worker-*.log; do
    [[ -f "$f" ]] && { echo "--- $f"; tail -15 "$f"; }
  done
  exit 1
}
teardown() {
  if [[ -s "$Q/pids" ]]; then  # the cluster --keep left, if a check failed first
    while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$Q/pids"
  fi
  [[ "$keep_work" == 1 ]] || rm -rf "$work"
}
trap teardown EXIT
export GEMMA_QUICKSTART_NO_BUILD=1 GEMMA_BIN="$BIN" GEMMA_PYTHON="$PY"
qs=(bash "$SRC/deploy/quickstart.sh")

# Usage and refusals, before anything starts.
"${qs[@]}" --help >"$work/help.txt" || fail "--help exited $?"
grep -q -- "--keep" "$work/help.txt" || fail "--help does not describe --keep"
rc=0; "${qs[@]}" --bogus >/dev/null 2>&1 || rc=$?
[[ $rc == 2 ]] || fail "an unknown argument exited $rc, not 2"
mkdir -p "$work/not-ours" && touch "$work/not-ours/precious"
rc=0; GEMMA_QUICKSTART_DIR="$work/not-ours" "${qs[@]}" >"$work/refused.log" 2>&1 || rc=$?
[[ $rc != 0 && -f "$work/not-ours/precious" ]] ||
  fail "a folder the quickstart did not make was used (exit $rc)"
rc=0; GEMMA_BIN="$work/not-ours" "${qs[@]}" >/dev/null 2>&1 || rc=$?
[[ $rc != 0 ]] || fail "missing programs did not fail the quickstart"

# The whole demo, leaving the cluster up.
start=$SECONDS
GEMMA_QUICKSTART_DIR="$Q" "${qs[@]}" --keep >"$work/out.log" 2>&1 ||
  fail "quickstart.sh exited $?"
echo "quickstart: $((SECONDS - start)) s"
sed -n '/== before \/ after/,/target tokens/p' "$work/out.log"
for want in "== 5. sft at dp=2" "== 7. eval AFTER" "== 9. generate" "token accuracy" "field F1"; do
  grep -qF -- "$want" "$work/out.log" || fail "the output lacks '$want'"
done

# The numbers: learned on held-out data, exports present and loadable.
"$PY" - "$Q" <<'PY' || fail "summary checks"
import json, os, sys
q = sys.argv[1]
s = json.load(open(os.path.join(q, "summary.json")))
assert s["ok"] is True, s
b, sft, peft = s["before"], s["sft"], s["peft"]
for k in ("before", "sft", "peft"):
    r = json.load(open(s[k]["report"]))  # the eval job's own report
    assert abs(r["token_accuracy"] - s[k]["token_accuracy"]) < 1e-12, k
    assert r["examples"] == 100 and r["tokens"] > 0, r
    assert r["generation"]["examples"] > 0, r
# Training clearly learned on receipts it never saw (chance is ~1/vocab).
assert sft["token_accuracy"] > b["token_accuracy"] + 0.2, (b, sft)
assert peft["token_accuracy"] > b["token_accuracy"] + 0.2, (b, peft)
assert sft["loss"] < b["loss"] - 1.0 and peft["loss"] < b["loss"] - 1.0, (b, sft, peft)
assert sft["cer"] < b["cer"], (b, sft)
# It reads: the receipts' values are only in their pixels (the prompt is always the
# same), and whole held-out receipts come out right.
for k in ("sft", "peft"):
    assert s[k]["token_accuracy"] >= 0.9, (k, s[k])
    assert s[k]["exact_match"] >= 0.5 and s[k]["field_f1"] >= 0.8, (k, s[k])
ex = s["exports"]
for f in ("config.json", "model.safetensors", "tokenizer.model"):
    assert os.path.getsize(os.path.join(ex["sft_hf"], f)) > 0, f
for f in ("adapter_config.json", "adapter_model.safetensors"):
    assert os.path.getsize(os.path.join(ex["peft_adapter"], f)) > 0, f
rows = [json.loads(l) for l in open(ex["generate"])]
assert len(rows) == 4 and all(r["output"] and r["reference"] for r in rows), rows
print(f"token accuracy {b['token_accuracy']:.3f} -> {sft['token_accuracy']:.3f} (sft), "
      f"{peft['token_accuracy']:.3f} (peft); loss {b['loss']:.2f} -> {sft['loss']:.2f}; "
      f"exact match {sft['exact_match']:.3f} (sft), {peft['exact_match']:.3f} (peft)")

# The exports load where users take them: transformers, and peft on top.
import torch
from transformers import Gemma3ForConditionalGeneration
from peft import PeftModel
model = Gemma3ForConditionalGeneration.from_pretrained(ex["sft_hf"])
cfg = json.load(open(os.path.join(ex["peft_adapter"], "adapter_config.json")))
assert cfg["peft_type"] == "LORA" and cfg["r"] == 8, cfg
before = {n: p.clone() for n, p in model.named_parameters()}
peft_model = PeftModel.from_pretrained(model, ex["peft_adapter"])
lora = [n for n, _ in peft_model.named_parameters() if "lora_B" in n]
assert lora and any(p.abs().sum() > 0 for n, p in peft_model.named_parameters() if "lora_B" in n)
print(f"transformers loaded {ex['sft_hf']}; peft loaded {len(lora)} LoRA B matrices")
PY

# --keep: the cluster is still up, knows every job, and the pids file stops it.
[[ -s "$Q/env" && -s "$Q/pids" ]] || fail "--keep wrote no $Q/env or $Q/pids"
(
  source "$Q/env"
  "$BIN/gemmactl" list -o json >"$work/jobs.json"
) || fail "the kept cluster does not answer"
"$PY" - "$work/jobs.json" <<'PY' || fail "the kept cluster's jobs"
import json, sys
j = json.load(open(sys.argv[1]))
jobs = {x["name"]: x for x in (j["jobs"] if isinstance(j, dict) else j)}
want = ["diagnose", "import", "eval-before", "sft", "peft", "eval-sft", "eval-peft", "export", "generate"]
for n in want:
    assert jobs[f"jobs/{n}"]["state"] == "JOB_STATE_SUCCEEDED", (n, jobs.get(f"jobs/{n}"))
assert jobs["jobs/sft"]["spec"]["parallel"]["dp"] == 2, jobs["jobs/sft"]["spec"]
print(f"{len(want)} jobs SUCCEEDED on the kept cluster")
PY
mapfile -t pids <"$Q/pids"
kill "${pids[@]}"
for _ in $(seq 100); do
  alive=0
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  ((alive == 0)) && break
  sleep 0.1
done
((alive == 0)) || fail "the kept cluster did not stop"
echo "PASS"

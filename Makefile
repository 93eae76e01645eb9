# Two entry points on a fresh machine:
#   make demo   set up, then a passkey comparison (origin vs mesa past 8192 tokens) on
#               SmolLM2-135M-Instruct, offline, with its HTML figure in runs/demo/
#   make test   set up (Python packages, headless Chromium), then the whole test suite
# Test layers (pytest markers, README "Tests"): unit, tiny, slow (the default model), browser;
#   make test-fast   unit + tiny only: no network, no default model, no browser (a few minutes)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup browser test test-fast demo bench thresholds report clean
.PHONY: ppl ruler

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,notebooks,eval]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

browser:
	bash scripts/install_browser.sh

test: setup browser
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "unit or tiny"

demo: setup
	$(VENV)/bin/mesa-viz passkey --methods origin,mesa --lengths 12288,16384 \
	    --depths 0.1,0.5,0.9 --samples 1 --out runs/demo

thresholds: setup
	$(VENV)/bin/mesa-viz thresholds --length 16384 --methods origin,mesa,rerope \
	    --out runs/thresholds/thresholds.jsonl

bench: setup
	$(VENV)/bin/mesa-viz bench \
	    --lengths 2048,4096,8192,16384,32768 --repeats 1 --decode-tokens 4 --out runs/bench.jsonl --figure runs/bench.html

report: setup
	$(VENV)/bin/mesa-viz report --out runs/report.html

# the browser tests' screenshots of each notebook's first screen and of the report, into docs/
.PHONY: screenshots
screenshots: setup browser
	MESA_VIZ_SCREENSHOTS=docs/screenshots $(PY) -m pytest -q tests/test_browser.py \
	    -k "first_screen or report"
ppl: setup
	$(VENV)/bin/mesa-viz ppl --methods origin,mesa,rerope,string,pi,ntk,yarn,dynamic-ntk,streaming-llm,lm-infinite,leaky-rerope,stair,dual-chunk,self-extend \
	    --lengths 16384 --texts code,book --out benchmarks/eval/ppl.jsonl

ruler: setup
	$(VENV)/bin/mesa-viz ruler --methods origin,mesa,rerope,self-extend --tasks ruler_offline \
	    --lengths 4096,8192,12288,16384 --samples 3 --out benchmarks/eval/ruler.jsonl

clean:
	rm -rf $(VENV) runs

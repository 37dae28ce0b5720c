# Two entry points: `make demo` and `make test`. Both create/update .venv first.
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test install clean

$(STAMP): pyproject.toml scripts/install_torch.sh
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	scripts/install_torch.sh $(VENV)
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# A small robustness sweep (configs/demo_sweep.yaml) and its report: results/demo/report.html.
demo: $(STAMP)
	$(VENV)/bin/appo sweep --config configs/demo_sweep.yaml --out results/demo --report

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

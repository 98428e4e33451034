# daomirror: the few commands a developer needs. See README.rst.
PYTHON ?= python3
VENV ?= .venv
CONFIG ?= etc/daomirror.toml
PYTEST_ARGS ?=

.PHONY: install run test demo bench clean

# An editable install in "compat" mode puts the work tree itself on sys.path,
# which is what lets twistd find twisted/plugins/daomirror_plugin.py.
$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q --config-settings editable_mode=compat -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/twistd --nodaemon --pidfile= daomirror --config $(CONFIG)

test: install
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/python tools/demo.py

bench: install
	$(VENV)/bin/python benchmarks/side_by_side.py

clean:
	rm -rf $(VENV) build *.egg-info twisted/plugins/dropin.cache

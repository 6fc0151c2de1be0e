# Two commands for a fresh clone:
#   make run    the product, with an embedded PostgreSQL, restate-server, demo services and traffic
#   make test   the whole test suite (what CI runs)
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: run test lint bench setup clean-data browser graphviz

$(STAMP): requirements.txt package.json package-lock.json
	python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	npm ci --no-audit --no-fund --loglevel=error
	touch $(STAMP)

setup: $(STAMP) graphviz

run: $(STAMP) graphviz
	$(PY) manage.py run_stack

# The browser tests need Debian's Chromium; install it when missing (CI runs as root).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The service map is laid out by Graphviz's dot; install Debian's when missing.
# Without it (and without root to install it) the map is shown as tables instead.
graphviz:
	@command -v dot >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null; } \
		|| echo "Graphviz's dot is missing and could not be installed: the service map shows tables instead of a drawing"

# Lint, layer rules, types, migrations in step with the models, then every test in random order.
test: $(STAMP) browser graphviz
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	.venv/bin/lint-imports --no-cache
	$(PY) -m mypy
	$(PY) manage.py makemigrations --check --dry-run
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m benchmarks.sync_bench

clean-data:
	rm -rf data

# The push feed (Restate's spans as hints): backfill vs bare COPY, freshness in Chromium with hints
# and with polling only, Restate's CPU for mirroring per mode, rows missed; 100,000 retained.
.PHONY: bench-push
bench-push: $(STAMP) browser
	$(PY) -m benchmarks.push_bench

# Where mirroring spends Restate's CPU in push mode: the queries of 60 s, replayed by kind, and
# the CPU of one query of each shape; 20,000 retained.
.PHONY: bench-restate-cost
bench-restate-cost: $(STAMP)
	$(PY) -m benchmarks.restate_cost_probe

# List/detail page times at 1,000,000 generated invocations, tree rendering, and live-update
# freshness in Chromium under demo load (needs Chromium, like the browser tests).
.PHONY: bench-pages
bench-pages: $(STAMP) browser graphviz
	$(PY) -m benchmarks.pages_bench

# Deadlock detection at 10k-100k waiting invocations (generated), against a bare read of the same rows.
.PHONY: bench-deadlocks
bench-deadlocks: $(STAMP)
	$(PY) -m benchmarks.deadlock_bench
# /stuck/ at 1,000,000 invocations with 100,000 unfinished: the page, its live fragment, the
# grouping, the list links it hands out and a detail panel, against a bare GROUP BY status.
.PHONY: bench-stuck
bench-stuck: $(STAMP)
	$(PY) -m benchmarks.stuck_bench

# A bulk cancel of 10,000 invocations through our job runner against Restate's own CLI
# by filter, in the same run (N=... to change the count).
.PHONY: bench-bulk
bench-bulk: $(STAMP)
	$(PY) -m benchmarks.bulk_bench --n $(or $(N),10000)

# /objects/ and a key's page at 750, 7,500 and 75,000 busy object keys (a scratch database).
.PHONY: bench-objects
bench-objects: $(STAMP)
	$(PY) -m benchmarks.objects_bench

# /workflows/ and a workflow's page at 100,000 workflow runs among 1,000,000 invocations, with and
# without the runs' partial indexes (a scratch database).
.PHONY: bench-workflows
bench-workflows: $(STAMP)
	$(PY) -m benchmarks.workflows_bench
# /delayed/ with 100,000 pending delayed messages among 1,000,000 invocations, against 1% of that
# (the pages benchmark's part 6 alone; `make bench-pages` runs it too).
.PHONY: bench-delayed
bench-delayed: $(STAMP)
	$(PY) -m benchmarks.pages_bench --only-delayed

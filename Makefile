# Convenience targets; the README's two commands are the source of truth.
.PHONY: demo test bench
demo:
	go run ./cmd/decryptd demo

test:
	./scripts/test.sh

# Micro-benchmarks, the drain against a bare subscriber and the cold start;
# figures in docs/bench/ (see BENCHMARKS.md). About a minute on 2 cores.
bench:
	./scripts/bench.sh

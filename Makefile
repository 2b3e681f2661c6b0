# Convenience targets; the README's two commands are the source of truth.
.PHONY: demo test bench
demo:
	go run ./cmd/decryptd demo

test:
	./scripts/test.sh

# Micro-benchmarks, the drain against a bare subscriber (MQTT) and a bare
# franz-go consumer (Kafka, kfake), the cold start and the sinks; figures in
# docs/bench/ (see BENCHMARKS.md). A few minutes on 2 cores.
bench:
	./scripts/bench.sh

# Convenience targets; the README's two commands are the source of truth.
.PHONY: demo test
demo:
	go run ./cmd/decryptd demo

test:
	./scripts/test.sh


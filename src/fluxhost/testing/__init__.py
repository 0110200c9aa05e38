"""Test fixtures shipped for tests, benches and load tests: tiny random-weight pipelines, tiny
classifiers, and the bench engine. Never a default of the service."""

//! Switchyard load-test harness and mock LLM provider.

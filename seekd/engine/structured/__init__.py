"""Grammar-constrained decoding (response_format, tool calls) with llguidance."""

"""twistd plugin entry: `twistd fproxy`. Kept import-light: fproxy.tap loads lazily."""
from twisted.application.service import ServiceMaker

fproxy = ServiceMaker("fproxy", "fproxy.tap", "LLM API gateway (OpenAI / Anthropic / Responses)", "fproxy")

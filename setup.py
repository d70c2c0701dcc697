from setuptools import find_packages, setup

setup(
    name="fproxy",
    version="0.1.0",
    description="A self-hosted LLM API gateway on Twisted: OpenAI Chat, OpenAI Responses and Anthropic Messages in, "
                "any provider out.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests*", "bench*"]) + ["twisted.plugins"],
    package_data={"twisted": ["plugins/fproxy_plugin.py"]},
    install_requires=[
        "twisted[tls,http2]>=24.7",
        "treq>=24.9",
        "klein>=24.8",
        "service-identity>=24.1",
        "pyopenssl>=24.0",
        "attrs>=23.1",
        "orjson>=3.9",
        "prometheus-client>=0.20",
        "txredisapi>=1.4",  # state.url = "redis://..."
        "psycopg[binary]>=3.1",  # store.url = "postgresql://..."
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-twisted>=1.14", "openai>=1.40", "anthropic>=0.40", "hypothesis>=6.100",
                 "httpx[http2]>=0.27", "prometheus-client>=0.20"],
    },
    entry_points={"console_scripts": ["fproxy=fproxy.cli:main"]},
)

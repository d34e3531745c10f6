"""The referee of token_counts.rs: the official DashScope SDK's own local tokenizer.

Reads a JSON list of texts on standard input and writes, on standard output, the SDK's
version, the path of the vocabulary it ships, and the ids its tokenizer gives each text:
{"version": "2.0.2", "vocabulary": ".../qwen.tiktoken", "ids": [[...], ...]}.
Run with the Python of scripts/lib.sh's ensure_token_referee (PG_BAILIAN_TOKEN_REFEREE).
"""

import json
import os
import sys

import dashscope

tokenizer = dashscope.get_tokenizer("qwen-turbo")
texts = json.load(sys.stdin)
json.dump(
    {
        "version": dashscope.__version__,
        "vocabulary": os.path.join(os.path.dirname(dashscope.__file__), "resources", "qwen.tiktoken"),
        "ids": [tokenizer.encode(text) for text in texts],
    },
    sys.stdout,
)

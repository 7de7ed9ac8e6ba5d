"""`make demo`: starts the three services, generates a meditation for the sample conversation, stops them."""

from __future__ import annotations

import sys
from pathlib import Path

from scripts.stack import running_stack
from services import cli

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    """Runs the whole job once, on the embedded offline defaults."""
    var_root = ROOT / "var"
    conversation = ROOT / "examples" / "conversation.json"
    print("Starting content, media and gateway (logs in var/logs/) …", flush=True)
    try:
        with running_stack(var_root, ports={"gateway": 50051, "content": 50052, "media": 50053}) as stack:
            print(f"Gateway serving on {stack.gateway_address}\n", flush=True)
            code = cli.main(
                [
                    "--gateway",
                    stack.gateway_address,
                    "--api-key",
                    stack.api_key,
                    "--out",
                    str(ROOT / "out"),
                    "generate",
                    "--conversation",
                    str(conversation),
                ]
            )
    except RuntimeError as error:
        print(f"demo: a service did not start: {error}", file=sys.stderr)
        return 1
    print("Services stopped.")
    return code


if __name__ == "__main__":
    sys.exit(main())

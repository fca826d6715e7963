import sys

from bridgerl.cli import main

if __name__ == "__main__":  # vLLM's engine starts its processes with spawn
    sys.exit(main())

import sys

from tunesmith.orchestrator.cli import main

sys.exit(main())

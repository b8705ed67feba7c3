from tunesmith.orchestrator.cli import entry

entry()

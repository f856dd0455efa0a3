"""Orchestration only: load -> capture -> score -> store."""

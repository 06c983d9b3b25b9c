"""One instance's scheduling: pure Python, no torch, no asyncio, no clock."""

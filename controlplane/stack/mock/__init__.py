"""The mock provider's parts: every provider API it speaks, one module each.

:mod:`controlplane.stack.mock_provider` assembles them into the app the stack runner starts;
:mod:`.core` holds what they share (the request log, the injected-key checks, each provider's error
shape, the streams' pacing).
"""

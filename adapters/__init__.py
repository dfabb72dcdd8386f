"""OEM heads: one self-contained folder per car maker's cloud API (client, OAuth, fixtures).

Each head implements the OEM adapter protocol of :mod:`twin.oem` over HTTP with ``httpx``.
"""

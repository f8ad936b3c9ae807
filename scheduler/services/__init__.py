"""Application services: the use cases every front end calls.

The CLI, the HTTP API, the console pages, the service's jobs and the simulator parse their
input, call one function here and format its result; none of them builds a query, picks a
quota window or opens the store itself (tests/unit/test_architecture.py holds them to it).
"""

"""Session-scoped services for tests: a moto S3 server and one local Ray instance.

Started by the tests themselves, on 127.0.0.1, so CI needs nothing running beforehand.
"""

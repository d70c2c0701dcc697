"""fproxy.providers"""

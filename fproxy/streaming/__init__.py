"""fproxy.streaming"""

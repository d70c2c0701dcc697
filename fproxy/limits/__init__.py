"""fproxy.limits"""

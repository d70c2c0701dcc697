"""fproxy.ir"""

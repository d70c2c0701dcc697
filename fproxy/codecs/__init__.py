"""fproxy.codecs"""

"""The store: all SQL lives in these modules, one per concept, offering verbs to the core.

Campaign, delivery and quota logic call these verbs; they do not build queries themselves.
"""

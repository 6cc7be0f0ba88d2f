"""`make bench`: the overhead against bare Flask, and goodput under overload."""

"""The shared base every app may import: the refused-action error, input validation, and the one
path from a refused action to an HTTP response. It imports no other app of the project."""

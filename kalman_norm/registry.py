"""A registry: named rows of one type, each registered once, looked up with a one-line error."""

__all__ = ['Registry']


class Registry(object):
    """Rows of ``row_type`` by their ``name``, in registration order (the norm and model registries)."""

    def __init__(self, what, row_type):
        self.what, self.row_type = what, row_type
        self.rows = {}

    def register(self, row):
        if not isinstance(row, self.row_type):
            raise TypeError('Register a %s, got %r' % (self.row_type.__name__, row))
        if row.name in self.rows:
            raise ValueError('A %s named %r is registered already' % (self.what, row.name))
        self.rows[row.name] = row
        return row

    def get(self, name):
        try:
            return self.rows[name]
        except (KeyError, TypeError):
            raise ValueError('Unknown %s %r; choose one of: %s' % (self.what, name, ', '.join(self.rows)))

    def names(self):
        return tuple(self.rows)

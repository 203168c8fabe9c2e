"""What ``cnn viz`` shows: a network's filters, feature maps, class activation maps, its
layer graph and learning curves.

The numbers (NumPy) and the pictures are kept apart: :mod:`probe`, :mod:`tiles`,
:mod:`filters`, :mod:`maps`, :mod:`cam` and :mod:`graph` compute plain data that scripts
can use (``--format json``); :mod:`figures` and :mod:`canvas` draw it with matplotlib,
which is imported only when a picture is written.
"""

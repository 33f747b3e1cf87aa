//! Fragment state: the first fragment decides, later ones follow.

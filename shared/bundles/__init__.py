"""Model bundles and their trust: the manifest, signing, the trust policy, archives, downloads, answer matching."""

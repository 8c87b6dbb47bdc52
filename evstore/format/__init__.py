"""The log format, without I/O of the store's: the record layout and error codes (`layout`), the two
implementations of the codec — C (`clog`, over src_c/) and pure Python (`pylog`), chosen by
`codec.load` — and the commit encoder (`encode`). See docs/log_format.md."""

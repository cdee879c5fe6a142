"""Everything that touches Faust's or aiokafka's internals: the private names (compat), the engine's store, publisher and bulk recovery."""

"""The provider Batch API as a mode of agents-map (--batch): the same job, half the price,
answers within a day."""

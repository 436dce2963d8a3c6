//! Inventory pre-deduction (in-process or Redis) and the sold-out flag; will sit in front of the queue so that no more purchases are accepted than units exist. Not built yet.

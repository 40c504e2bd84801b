"""Stages 2-4 of ALPS: the filtering gate, pseudo feature labels, k-means over the dataset, label painting."""

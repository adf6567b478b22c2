from medurwkv.utils import top_counts


def test_top_counts_orders_by_count_and_counts_the_rest():
    sizes = {"10x10": 1, "20x20": 5, "30x30": 3, "40x40": 2}
    assert top_counts(sizes, 2) == "20x20: 5, 30x30: 3, ... (2 more)"
    assert top_counts(sizes) == "20x20: 5, 30x30: 3, 40x40: 2, 10x10: 1"
    assert top_counts({}) == ""

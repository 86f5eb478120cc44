"""see DESIGN"""
